"""The int8 lowering passes, one module each; their order is declared in squeezeedge.lowering.pipeline."""
