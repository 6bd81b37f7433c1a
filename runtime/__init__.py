"""Runtime side: reads edge packages and runs them with numpy, onnxruntime and tokenizers only."""
