"""services: stand-alone services (the search proxy)."""
