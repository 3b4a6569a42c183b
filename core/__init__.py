"""fraudstream's shared kernel: settings, schemas, dataset access, the model-bundle reader
and the embedded runtime. It imports no service."""
