"""ml_collections configs: one file per dataset x backbone, each with `get_config(arg=None)`."""
