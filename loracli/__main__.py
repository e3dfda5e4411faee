"""``python -m loracli`` (also what ``torchrun -m loracli`` runs)."""

from loracli.cli.app import main

if __name__ == "__main__":
    main()
