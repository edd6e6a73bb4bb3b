"""`make demo`: capture a loyalty program, break it, restore it."""
