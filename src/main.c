/* nbsphere command line: parses arguments, loads the pipeline, calls the modules in order. */
#include <stdio.h>
#include <string.h>

#include "nbsphere/error.h"

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("nbsphere 0.1.0\n");
        return 0;
    }
    fprintf(stderr, "usage: nbsphere COMMAND [options]\n");
    return NBS_ERR_USAGE;
}
