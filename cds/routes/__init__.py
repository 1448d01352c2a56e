"""HTTP routes, one module per endpoint family; each handler is a few lines over cds.* logic."""
