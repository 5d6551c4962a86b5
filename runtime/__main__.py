"""``python -m runtime``: the conveyor command line."""

if __name__ == "__main__":
    # Worker processes (multiprocessing's spawn) import this module too: they must not
    # run it, nor pay for importing the command line, so everything happens under here.
    import sys

    from runtime.cli import main

    sys.exit(main())
