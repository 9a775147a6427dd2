"""Image ingest: task image -> download -> decode -> prepared array -> cache -> features."""
