/* The test programs' shared real Barbican (see barbican_fixture.c). */
#ifndef VMSUP_TESTS_BARBICAN_FIXTURE_H
#define VMSUP_TESTS_BARBICAN_FIXTURE_H

/* "http://127.0.0.1:PORT" of the running Barbican; fails the test, saying why, when there
 * is none. */
const char *test_barbican_url(void);

#endif
