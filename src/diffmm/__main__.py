"""``python -m diffmm``: the ``diffmm`` command (also ``torchrun ... -m diffmm train``)."""

from diffmm.cli import main

if __name__ == "__main__":
    main()
