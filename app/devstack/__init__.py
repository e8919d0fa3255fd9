"""The local stack behind `record up`: embedded servers, a supervisor, the demo bootstrap."""
