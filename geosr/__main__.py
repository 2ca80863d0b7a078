"""`python -m geosr` runs the command-line interface."""

from geosr.cli import app

if __name__ == "__main__":
    app(prog_name="geosr")
