"""Run one `flywheel run-once` that SIGKILLs itself in the middle of STEP, right after the step's work and
before the store records it (for training: mid-run, after a checkpoint), as a crash would.

    python -m tests.flywheel.crash POLICY STORE_URL STEP
"""

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(module, name: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        die()
        return result

    setattr(module, name, wrapper)


def main() -> None:
    policy_file, store_url, step = sys.argv[1:4]
    from loraforge.flywheel import actions, turn
    from loraforge.flywheel.policy import load_policy
    from loraforge.store import Store
    from loraforge.train import run

    if step == "train":
        original = run.run_training

        def training(*args, **kwargs):
            def on_step(state):
                if state.step == 3:  # the checkpoint of step 2 is on disk
                    die()

            return original(*args, **{**kwargs, "on_step": on_step})

        run.run_training = training
    elif step == "shadow":
        after(turn, "set_route")
    else:
        after(actions, {"dataset": "build_version", "register": "register", "compare": "compare"}[step])
    turn.run_once(Store(store_url), load_policy(Path(policy_file)))
    sys.exit("the crash point was not reached")


if __name__ == "__main__":
    main()
