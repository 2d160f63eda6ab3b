"""LightningModules and data modules: the training edge of the library."""
