// Hostile: makes the compiler print a secret in its error messages.
#include "/etc/shadow"
