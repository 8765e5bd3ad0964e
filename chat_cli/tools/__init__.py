"""Tools the model may call: the toolbox, the tool loop, the MCP client and its config."""
