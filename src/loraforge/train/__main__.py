"""`python -m loraforge.train ARGS` = `loraforge train ARGS`: what torchrun runs in each process
(`torchrun --nproc-per-node N -m loraforge.train CONFIG ...`)."""

import sys

from loraforge.cli.main import main

if __name__ == "__main__":
    sys.argv = ["loraforge", "train", *sys.argv[1:]]
    main()
