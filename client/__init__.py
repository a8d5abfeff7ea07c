"""The `mapo` command line and the Python SDK (`client.sdk.MapoClient`); torch-free."""
