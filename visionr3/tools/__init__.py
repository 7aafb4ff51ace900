"""Image tools: geometry as pure functions (``geometry``) and thin verl ``BaseTool`` adapters over them."""
