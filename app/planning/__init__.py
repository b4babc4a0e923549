"""What to ask the PACS and what to re-check here (pure): study and patient search plans, manifest input."""
