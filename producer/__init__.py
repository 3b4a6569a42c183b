"""CSV → Kafka replay: publishes the Kaggle transactions as events, paced as asked."""
