"""pipelines: the ``featurize`` command line, batch extraction jobs, and Dask scale-out."""
