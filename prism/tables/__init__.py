"""The paper's tables from our benchmark JSONs, beside the published numbers."""
