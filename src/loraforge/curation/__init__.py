"""Dataset curation: versioned fine-tuning datasets built from the store's logged calls and their feedback."""
