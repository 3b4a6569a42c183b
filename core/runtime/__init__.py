"""The embedded runtime: the Tansu Kafka-protocol broker and PostgreSQL, as child processes."""
