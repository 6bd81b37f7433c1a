"""Export side: a Hugging Face model becomes an edge package (needs `edgeinfer[export]`)."""
