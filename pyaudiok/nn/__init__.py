"""nn.Modules that hold parameters and buffers and call the fused ops."""
