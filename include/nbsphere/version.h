/* The release of nbsphere, in one place: the Makefile reads it for the shared library's file
 * name and nbsphere.pc, and every file that records which nbsphere wrote it takes it from here. */
#ifndef NBSPHERE_VERSION_H
#define NBSPHERE_VERSION_H

#define NBS_VERSION "0.1.0"

#endif
