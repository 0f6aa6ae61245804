"""For model authors: `medhub new` (a package skeleton) and `medhub check` (the local check)."""
