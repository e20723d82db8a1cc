"""flexnode.py: the entry point of the flex node runtime; the verbs live in nodecli.py (see its
docstring: the node layout and every verb). A script is compiled on every run and never read from
__pycache__, so this one is three lines and the rest is an imported module, whose bytecode is cached
(and shipped with the runtime): ~3 ms of CPU less on every verb of every node."""

import sys

from nodecli import main

if __name__ == "__main__":
    sys.exit(main())
