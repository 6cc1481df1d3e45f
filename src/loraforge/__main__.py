"""`python -m loraforge`: the same as the `loraforge` command."""

from loraforge.cli.main import main

if __name__ == "__main__":
    main()
