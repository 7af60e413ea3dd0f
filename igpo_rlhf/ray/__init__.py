"""Ray actors (rollout, policy, reference, critic, belief scorer) and the training controller."""
