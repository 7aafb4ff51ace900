"""Multi-turn vision agent loops on verl's ToolAgentLoop, and the tool-call parsers they use."""
