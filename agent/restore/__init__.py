"""Point-in-time restore: target -> plan -> fold -> apply -> verify -> audit."""
