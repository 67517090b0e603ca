"""Sample text from a trained run:  python generate.py runs/<run> --prompt "Once upon a time" --top_k 50"""

import sys

from cs336_basics.cli import run_main
from cs336_basics.cli.generate import main

if __name__ == "__main__":
    sys.exit(run_main(main))
