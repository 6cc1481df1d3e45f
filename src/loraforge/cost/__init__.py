"""What calls cost: the general model by its token prices, an adapter by the hardware it runs on and the
throughput measured on that deployment; and the savings of routing tasks to adapters."""
