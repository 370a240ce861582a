"""pytest plugin providing the ESX lab fixtures (filled in by the lab work)."""
