"""`python -m etl_pipelines.cli`: the etl-jobs command."""

from etl_pipelines.cli import main

if __name__ == "__main__":
    main()
