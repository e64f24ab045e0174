/* vmsup(8) against the source: every exit status the code can return is documented in
 * EXIT STATUS, and the section lists no code the source never uses. */
#include "config.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <ftw.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define MAX_CODE 256

struct code_names {
        char *name[MAX_CODE]; /* VMSUP_EX_* name of each value, from common/error.h */
        bool used[MAX_CODE];
        char *where[MAX_CODE]; /* first file that uses it */
};

static struct code_names codes;

static char *slurp(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t len = 0;

        cr_assert_not_null(f, "open %s", path);
        cr_assert_eq(getdelim(&buf, &len, '\0', f) >= 0 || feof(f), true, "read %s", path);
        fclose(f);
        return buf ? buf : strdup("");
}

/* "VMSUP_EX_NAME = N," lines of the enum in common/error.h */
static void read_enum(void) {
        char *text = slurp(TEST_SRCDIR "/common/error.h");
        regex_t re;
        regmatch_t m[3];
        const char *p = text;
        int n = 0;

        cr_assert_eq(regcomp(&re, "(VMSUP_EX_[A-Z]+)[ \t]*=[ \t]*([0-9]+)", REG_EXTENDED), 0);
        while (regexec(&re, p, 3, m, 0) == 0) {
                int v = atoi(p + m[2].rm_so);

                cr_assert(v >= 0 && v < MAX_CODE);
                codes.name[v] = strndup(p + m[1].rm_so, (size_t) (m[1].rm_eo - m[1].rm_so));
                p += m[0].rm_eo;
                n++;
        }
        regfree(&re);
        free(text);
        cr_assert_gt(n, 10, "common/error.h: found only %d VMSUP_EX_ values", n);
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
        if (strcmp(path + len - strlen("common/error.h"), "common/error.h") == 0)
                return FTW_CONTINUE; /* the definitions, not uses */
        text = slurp(path);
        for (int v = 0; v < MAX_CODE; v++) {
                const char *p;
                size_t nl;

                if (!codes.name[v])
                        continue;
                nl = strlen(codes.name[v]);
                for (p = strstr(text, codes.name[v]); p; p = strstr(p + 1, codes.name[v]))
                        if (!isalnum((unsigned char) p[nl]) && p[nl] != '_') {
                                if (!codes.used[v])
                                        codes.where[v] = strdup(path + strlen(TEST_SRCDIR) + 1);
                                codes.used[v] = true;
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

Test(manpage, every_exit_status_is_documented) {
        bool documented[MAX_CODE] = { false };
        int used = 0;

        read_enum();
        cr_assert_eq(nftw(TEST_SRCDIR, scan_file, 16, FTW_PHYS | FTW_ACTIONRETVAL), 0, "walk %s", TEST_SRCDIR);
        read_manpage(documented);
        cr_assert(documented[0], "docs/vmsup.8: EXIT STATUS does not list 0");
        for (int v = 1; v < MAX_CODE; v++) {
                if (codes.used[v]) {
                        used++;
                        cr_expect(documented[v], "exit status %d (%s, used in %s) is not in vmsup(8) EXIT STATUS", v,
                                  codes.name[v], codes.where[v]);
                } else if (documented[v])
                        cr_expect(false, "vmsup(8) EXIT STATUS lists %d, which no code returns%s%s", v,
                                  codes.name[v] ? ": " : "", codes.name[v] ? codes.name[v] : "");
        }
        cr_assert_gt(used, 8, "found only %d exit statuses in the source: is TEST_SRCDIR right (%s)?", used, TEST_SRCDIR);
}
