/* vmsup(8) against the source: every error kind has one exit status (cli/exitstatus.c),
 * every status a kind the source uses maps to is documented in EXIT STATUS, and the
 * section lists no status that no used kind maps to. */
#include "config.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <ftw.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/exitstatus.h"
#include "common/error.h"

#define MAX_CODE 256
#define MAX_NAMES 4

struct kind_names {
        char *name[VMSUP_ERR_KIND_MAX][MAX_NAMES]; /* VMSUP_ERR_* */
        bool used[VMSUP_ERR_KIND_MAX];
        char *where[VMSUP_ERR_KIND_MAX]; /* first file that uses it */
};

static struct kind_names kinds;

static char *slurp(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t len = 0;

        cr_assert_not_null(f, "open %s", path);
        cr_assert_eq(getdelim(&buf, &len, '\0', f) >= 0 || feof(f), true, "read %s", path);
        fclose(f);
        return buf ? buf : strdup("");
}

static void add_name(int k, const char *p, regoff_t so, regoff_t eo) {
        for (int i = 0; i < MAX_NAMES; i++)
                if (!kinds.name[k][i]) {
                        kinds.name[k][i] = strndup(p + so, (size_t) (eo - so));
                        return;
                }
        cr_assert_fail("more than %d names for kind %d", MAX_NAMES, k);
}

/* The kinds in the order of the enum in common/error.h. */
static void read_enum(void) {
        char *text = slurp(TEST_SRCDIR "/common/error.h");
        regex_t re;
        regmatch_t m[3];
        const char *p = text;
        int n = 0;

        cr_assert_eq(regcomp(&re, "\n[ \t]+(VMSUP_ERR_[A-Z_]+)( = 0)?,", REG_EXTENDED), 0);
        while (regexec(&re, p, 3, m, 0) == 0) {
                if (strncmp(p + m[1].rm_so, "VMSUP_ERR_KIND_MAX", strlen("VMSUP_ERR_KIND_MAX")) != 0) {
                        cr_assert_lt(n, VMSUP_ERR_KIND_MAX, "common/error.h: more kinds than VMSUP_ERR_KIND_MAX");
                        add_name(n++, p, m[1].rm_so, m[1].rm_eo);
                }
                p += m[0].rm_eo;
        }
        regfree(&re);
        cr_assert_eq(n, VMSUP_ERR_KIND_MAX, "common/error.h: found %d of the %d kinds", n, VMSUP_ERR_KIND_MAX);
        free(text);
}

/* Folders that hold no product code: the tests, benchmarks, docs and build leftovers. */
static bool skip_dir(const char *base) {
        static const char *const skip[] = { "tests", "bench", "docs", "m4", ".git", ".build", "autom4te.cache", ".libs",
                                            ".deps", NULL };

        for (size_t i = 0; skip[i]; i++)
                if (strcmp(base, skip[i]) == 0)
                        return true;
        return strncmp(base, "vmsup-", 6) == 0; /* a distcheck tree */
}

static int scan_file(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        size_t len = strlen(path);
        const char *base = path + ftw->base;
        char *text;

        (void) st;
        if (flag == FTW_D && skip_dir(base))
                return FTW_SKIP_SUBTREE;
        if (flag != FTW_F || len < 3 || (strcmp(path + len - 2, ".c") != 0 && strcmp(path + len - 2, ".h") != 0))
                return FTW_CONTINUE;
        if (strcmp(path + len - strlen("common/error.h"), "common/error.h") == 0 ||
            strcmp(path + len - strlen("common/error.c"), "common/error.c") == 0 ||
            strcmp(path + len - strlen("cli/exitstatus.c"), "cli/exitstatus.c") == 0)
                return FTW_CONTINUE; /* the definitions and the mapping, not uses */
        text = slurp(path);
        for (int k = 0; k < VMSUP_ERR_KIND_MAX; k++)
                for (int i = 0; i < MAX_NAMES && kinds.name[k][i] && !kinds.used[k]; i++) {
                        const char *name = kinds.name[k][i], *p;
                        size_t nl = strlen(name);

                        for (p = strstr(text, name); p; p = strstr(p + 1, name))
                                if (!isalnum((unsigned char) p[nl]) && p[nl] != '_') {
                                        kinds.where[k] = strdup(path + strlen(TEST_SRCDIR) + 1);
                                        kinds.used[k] = true;
                                        break;
                                }
                }
        free(text);
        return FTW_CONTINUE;
}

/* The numbers given as ".B N" in the EXIT STATUS section of docs/vmsup.8. */
static void read_manpage(bool documented[MAX_CODE]) {
        char *text = slurp(TEST_SRCDIR "/docs/vmsup.8");
        char *sec = strstr(text, "\n.SH EXIT STATUS");
        char *end, *line;

        cr_assert_not_null(sec, "docs/vmsup.8 has no EXIT STATUS section");
        sec += strlen("\n.SH EXIT STATUS");
        end = strstr(sec, "\n.SH ");
        if (end)
                *end = '\0';
        for (line = strtok(sec, "\n"); line; line = strtok(NULL, "\n")) {
                char *e;
                long v;

                if (strncmp(line, ".B ", 3) != 0)
                        continue;
                v = strtol(line + 3, &e, 10);
                if (e == line + 3 || *e != '\0')
                        continue;
                cr_assert(v >= 0 && v < MAX_CODE, "docs/vmsup.8: exit status %ld out of range", v);
                documented[v] = true;
        }
        free(text);
}

Test(manpage, every_kind_has_one_exit_status) {
        for (int k = 0; k < VMSUP_ERR_KIND_MAX; k++) {
                int v = cli_exit_status((enum vmsup_err_kind) k);

                cr_assert(v >= 0 && v < MAX_CODE, "kind %d: exit status %d", k, v);
                if (k == VMSUP_ERR_OK)
                        cr_assert_eq(v, 0, "success must exit 0, not %d", v);
                else
                        cr_assert_neq(v, 0, "kind %s has no exit status (a line missing in cli/exitstatus.c)",
                                      vmsup_err_kind_to_string((enum vmsup_err_kind) k));
        }
        cr_assert_eq(cli_exit_status(VMSUP_ERR_KIND_MAX), 70, "a kind out of range is an internal error");
        cr_assert_eq(cli_exit_status((enum vmsup_err_kind) -1), 70, "a kind out of range is an internal error");
        /* what the text-matched errors of old exited with, now told apart by kind */
        cr_assert_eq(cli_exit_status(VMSUP_ERR_NO_SUPERVISOR), cli_exit_status(VMSUP_ERR_UNAVAILABLE));
        cr_assert_eq(cli_exit_status(VMSUP_ERR_TIMEOUT), cli_exit_status(VMSUP_ERR_BUSY));
}

Test(manpage, every_kind_has_a_name_on_the_wire) {
        for (int k = 0; k < VMSUP_ERR_KIND_MAX; k++) {
                const char *name = vmsup_err_kind_to_string((enum vmsup_err_kind) k);

                for (int j = 0; j < k; j++)
                        cr_assert_str_neq(name, vmsup_err_kind_to_string((enum vmsup_err_kind) j),
                                          "kinds %d and %d share the name '%s'", j, k, name);
                if (k != VMSUP_ERR_OK)
                        cr_assert_eq(vmsup_err_kind_from_string(name), k, "'%s' does not read back", name);
        }
        /* an error is never a success, and a name we do not know is still a failure */
        cr_assert_eq(vmsup_err_kind_from_string("ok"), VMSUP_ERR_FAILED);
        cr_assert_eq(vmsup_err_kind_from_string("no-such-kind"), VMSUP_ERR_FAILED);
        cr_assert_eq(vmsup_err_kind_from_string(NULL), VMSUP_ERR_FAILED);
}

Test(manpage, every_exit_status_is_documented) {
        bool documented[MAX_CODE] = { false }, mapped[MAX_CODE] = { false };
        int used = 0;

        read_enum();
        cr_assert_eq(nftw(TEST_SRCDIR, scan_file, 16, FTW_PHYS | FTW_ACTIONRETVAL), 0, "walk %s", TEST_SRCDIR);
        read_manpage(documented);
        cr_assert(documented[0], "docs/vmsup.8: EXIT STATUS does not list 0");
        for (int k = 1; k < VMSUP_ERR_KIND_MAX; k++) {
                int v = cli_exit_status((enum vmsup_err_kind) k);

                if (!kinds.used[k])
                        continue;
                used++;
                mapped[v] = true;
                cr_expect(documented[v], "exit status %d (%s, used in %s) is not in vmsup(8) EXIT STATUS", v,
                          kinds.name[k][0], kinds.where[k]);
        }
        for (int v = 1; v < MAX_CODE; v++)
                if (documented[v])
                        cr_expect(mapped[v], "vmsup(8) EXIT STATUS lists %d, which no kind the source uses maps to", v);
        cr_assert_gt(used, 8, "found only %d kinds in the source: is TEST_SRCDIR right (%s)?", used, TEST_SRCDIR);
}
