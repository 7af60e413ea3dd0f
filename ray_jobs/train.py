"""Entry point for `ray job submit` (the same as `igpo train`):

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/train.py -c configs/qwen2.5-7b-igpo.yaml [--set key=value ...] [--resume]

Under `ray job submit`, RAY_ADDRESS is set, so the driver joins that cluster (or `resources.ray_address`).
The working directory is shipped to every node; the nodes need the package's dependencies installed
(the training image in docker/, or `pip install -e '.[gpu]'`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shipped working directory

from igpo_rlhf.ray.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
