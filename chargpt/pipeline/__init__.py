"""The pipeline around the library: named runs (config), what every stage script shares (stage), and dvc.yaml's
generated parts (dvc_sync)."""
