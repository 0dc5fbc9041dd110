"""The commands a user types (`quantlab <command>`): each a main() and a short run(); they import
runs/, report/ and engine/, never each other."""
