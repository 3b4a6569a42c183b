"""Training the hybrid fraud detector: autoencoder + XGBoost, evaluated on a time-ordered
split and written as a model bundle that `core.ensemble.Ensemble.load` reads.

    from training.pipeline import train
    result = train("data/creditcard-sample.csv.gz", "models/default", progress=False)
    result.manifest["version"]
"""
