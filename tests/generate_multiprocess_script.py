"""Run by tests/test_generate.py under a 2-process launcher: ``diffusers-edm-generate``'s ``main`` once per argument
list, the lists separated by ``--next`` (one launch for several runs: starting the processes is most of the time).

Usage: generate_multiprocess_script.py ARGS... [--next ARGS...]
"""

import itertools
import sys

from diffusers_edm.evaluation.generate import main

if __name__ == "__main__":
    for is_separator, argv in itertools.groupby(sys.argv[1:], key=lambda arg: arg == "--next"):
        if not is_separator:
            main(list(argv))
