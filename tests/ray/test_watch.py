"""Waiting on actors with a deadline (igpo_rlhf.ray.watch), with real Ray actors made by ActorGroup: a call
that does not finish names the actor, its role and the call; an actor whose process is SIGKILLed is named at
once, while its sibling still works; Ray errors raised inside `naming` name the role too."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from igpo_rlhf.config import load_config
from igpo_rlhf.ray import watch
from igpo_rlhf.ray.group import ActorGroup
from igpo_rlhf.ray.placement import place_roles, release


class Napper:
    def pid(self) -> int:
        return os.getpid()

    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@pytest.fixture()
def nappers(local_ray):
    resources = load_config(
        None, ["resources.rollout.num_actors=2", "resources.rollout.num_cpus=0.1"]
    ).resources
    placements = place_roles(resources, ["rollout"])
    group = ActorGroup(Napper, placements["rollout"])
    yield group
    group.kill()
    release(placements)


@pytest.mark.timeout(120)
def test_a_call_past_its_timeout_names_the_actors_still_busy(nappers):
    ray.get([a.pid.remote() for a in nappers.actors])  # both started
    refs = [nappers.actors[0].nap.remote(0.0), nappers.actors[1].nap.remote(300.0)]
    with pytest.raises(watch.ActorTimedOut) as info:
        watch.get(refs, "nap for step 7", 5.0, "train.timeouts.call_s")
    assert str(info.value).startswith(
        "rollout actor 1: nap for step 7 did not finish within 5 s (train.timeouts.call_s)"
    )
    assert (info.value.actors, info.value.doing) == (["rollout actor 1"], "nap for step 7")
    assert watch.get(refs[:1], "nap", 60.0, "k") == [0.0]


@pytest.mark.timeout(120)
def test_a_sigkilled_actor_is_named_at_once_while_its_sibling_still_works(nappers):
    pid = ray.get(nappers.actors[1].pid.remote())
    refs = [nappers.actors[0].nap.remote(300.0), nappers.actors[1].nap.remote(300.0)]
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(watch.ActorDied) as info:
        watch.get(refs, "generate for step 3", 3600.0, "train.timeouts.rollout_s")
    message = str(info.value)
    assert message.startswith("rollout actor 1 died during generate for step 3: ")
    assert "worker process has died" in message and info.value.actors == ["rollout actor 1"]
    with (
        pytest.raises(watch.ActorDied, match="^rollout actor 1 died during gathering: "),
        watch.naming("gathering"),
    ):
        ray.get(refs[1])
    with pytest.raises(watch.ActorDied, match="^rollout actor 1 died during waiting"):
        list(watch.wait(refs[1:], "waiting", 60.0, "k"))


def test_killed_groups_are_forgotten(nappers):
    actor = nappers.actors[0]
    assert watch.describe(actor._actor_id.hex()) == "rollout actor 0"
    nappers.kill()
    assert watch.describe(actor._actor_id.hex()) == f"actor {actor._actor_id.hex()[:12]}"
