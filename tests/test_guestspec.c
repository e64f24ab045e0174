#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "nova/guestspec.h"
#include "tests/helpers.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"
#define MINIMAL "\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256, \"flavor\": {\"name\": \"f\"}"

static char *parse_error(const char *json) {
        struct guest_spec spec;
        vmsup_error *err = NULL;
        char *msg;

        if (guest_spec_parse(json, strlen(json), "g.json", &spec, &err) == 0) {
                guest_spec_clear(&spec);
                return NULL;
        }
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "bad spec must be bad data, got %s (%s)", vmsup_err_kind_to_string(err->kind), err->msg);
        msg = strdup(err->msg);
        vmsup_error_free(err);
        return msg;
}

Test(guestspec, full_spec) {
        const char *json = "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 2, \"memory_mb\": 512,"
                           " \"owner\": {\"user_id\": \"u1\", \"project_id\": \"p1\"},"
                           " \"flavor\": {\"name\": \"m1.tpm\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\", \"hw:cpu_policy\": \"shared\"}},"
                           " \"image\": {\"id\": \"i1\", \"name\": \"debian\", \"properties\": {\"hw_firmware_type\": \"uefi\", \"os_distro\": \"debian\"}},"
                           " \"vtpm_secret_uuid\": null,"
                           " \"firmware\": {\"kernel\": \"/boot/vmlinuz\", \"initrd\": \"/boot/initrd\", \"cmdline\": \"console=ttyS0\"},"
                           " \"disks\": [{\"path\": \"/srv/d.qcow2\", \"format\": \"qcow2\"}, {\"path\": \"/srv/cd.iso\", \"readonly\": true}]}";
        struct guest_spec spec;
        vmsup_error *err = NULL;

        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(spec.uuid, UUID);
        cr_assert_str_eq(spec.name, "web-1");
        cr_assert_eq(spec.vcpus, 2);
        cr_assert_eq(spec.memory_mb, 512);
        cr_assert_str_eq(spec.owner_project_id, "p1");
        cr_assert_str_eq(spec.flavor_name, "m1.tpm");
        cr_assert_str_eq(guest_spec_extra_spec(&spec, "hw:tpm_version"), "2.0");
        cr_assert_null(guest_spec_extra_spec(&spec, "hw:tpm_model"));
        cr_assert_str_eq(spec.firmware_type, "uefi", "firmware type comes from hw_firmware_type");
        cr_assert_str_eq(spec.kernel, "/boot/vmlinuz");
        cr_assert_null(spec.vtpm_secret_uuid);
        cr_assert_eq(spec.n_disks, 2);
        cr_assert_str_eq(spec.disks[1].format, "raw");
        cr_assert(spec.disks[1].readonly);
        guest_spec_clear(&spec);
}

Test(guestspec, backing_chain) {
        const char *json = "{" MINIMAL ", \"disks\": [{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\","
                           " \"backing\": {\"path\": \"/srv/mid.qcow2\", \"format\": \"qcow2\","
                           " \"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\", \"backing\": null}}},"
                           " {\"path\": \"/srv/other.qcow2\", \"format\": \"qcow2\", \"backing\": null}]}";
        struct guest_spec spec;
        vmsup_error *err = NULL;

        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(spec.n_disks, 2);
        cr_assert_eq(spec.disks[0].n_backing, 2);
        cr_assert_str_eq(spec.disks[0].backing[0].path, "/srv/mid.qcow2");
        cr_assert_str_eq(spec.disks[0].backing[0].format, "qcow2");
        cr_assert_str_eq(spec.disks[0].backing[1].path, "/srv/base.raw");
        cr_assert_str_eq(spec.disks[0].backing[1].format, "raw");
        cr_assert_eq(spec.disks[1].n_backing, 0);
        guest_spec_clear(&spec);
}

Test(guestspec, backing_chain_at_most_15_layers) {
        char json[4096], *p = json;
        char *msg;

        p += sprintf(p, "{" MINIMAL ", \"disks\": [{\"path\": \"/l0\", \"format\": \"qcow2\"");
        for (int i = 1; i <= 16; i++)
                p += sprintf(p, ", \"backing\": {\"path\": \"/l%d\", \"format\": \"qcow2\"", i);
        for (int i = 1; i <= 16; i++)
                *p++ = '}';
        sprintf(p, "}]}");
        msg = parse_error(json);
        cr_assert_not_null(msg);
        cr_assert(strstr(msg, "a backing chain longer than 15 layers"), "%s", msg);
        free(msg);
}

Test(guestspec, firmware_defaults_to_bios) {
        const char *json = "{" MINIMAL "}";
        struct guest_spec spec;
        vmsup_error *err = NULL;

        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0);
        cr_assert_str_eq(spec.firmware_type, "bios");
        cr_assert_null(spec.image_name);
        guest_spec_clear(&spec);
}

Test(guestspec, on_crash_defaults_to_destroy_and_takes_libvirts_values) {
        static const char *const values[] = { "destroy", "restart", "preserve" };
        struct guest_spec spec;
        vmsup_error *err = NULL;
        const char *json = "{" MINIMAL "}";
        char buf[512];

        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0);
        cr_assert_eq(spec.on_crash, GUEST_ON_CRASH_DESTROY);
        guest_spec_clear(&spec);
        for (size_t i = 0; i < 3; i++) {
                snprintf(buf, sizeof(buf), "{" MINIMAL ", \"on_crash\": \"%s\"}", values[i]);
                cr_assert_eq(guest_spec_parse(buf, strlen(buf), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
                cr_assert_str_eq(guest_on_crash_to_string(spec.on_crash), values[i]);
                guest_spec_clear(&spec);
        }
}

struct bad_case {
        const char *json;
        const char *expect;
};

static void check_bad_specs(const struct bad_case *c);

static const struct bad_case bad_specs_cases[] = {
                { "not json", "not valid JSON" },
                { "{" MINIMAL "", "not valid JSON" },
                { "{" MINIMAL "} trailing", "not valid JSON" },
                { "[1, 2]", "must be a JSON object" },
                { "{\"name\": \"g\"}", "key 'uuid': missing" },
                { "{\"uuid\": 7}", "key 'uuid': must be a string" },
                { "{\"uuid\": \"../../etc\"}", "key 'uuid': not a lower-case UUID" },
                { "{\"uuid\": \"0B7C6E4A-3F0E-4D5C-9A1B-2C3D4E5F6A7B\"}", "key 'uuid': not a lower-case UUID" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": \"2\", \"memory_mb\": 256}",
                  "key 'vcpus': must be an integer" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 0, \"memory_mb\": 256}",
                  "key 'vcpus': 0 is out of range" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1}", "key 'memory_mb': missing" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256}", "key 'flavor': missing" },
                { "{" MINIMAL ", \"flavour\": {}}", "key 'flavour': unknown key" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256, \"flavor\": {\"extra_specs\": {}}}",
                  "key 'flavor.name': missing" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256, \"flavor\": {\"name\": \"f\", \"extra_specs\": {\"hw:tpm_version\": 2.0}}}",
                  "key 'flavor.extra_specs.hw:tpm_version': must be a string" },
                { "{" MINIMAL ", \"image\": {\"properties\": {\"hw_tpm_model\": true}}}",
                  "key 'image.properties.hw_tpm_model': must be a string" },
                { "{" MINIMAL ", \"image\": {\"properties\": \"x\"}}", "key 'image.properties': must be an object" },
                { "{" MINIMAL ", \"owner\": {\"user\": \"x\"}}", "key 'owner.user': unknown key" },
                { "{" MINIMAL ", \"vtpm_secret_uuid\": \"abc\"}", "key 'vtpm_secret_uuid': not a lower-case UUID" },
                { "{" MINIMAL ", \"firmware\": {\"type\": \"coreboot\"}}", "key 'firmware.type': must be uefi or bios" },
                { "{" MINIMAL ", \"on_crash\": \"coredump-destroy\"}", "key 'on_crash': must be destroy, restart or preserve" },
                { "{" MINIMAL ", \"on_crash\": 1}", "key 'on_crash': must be a string" },
                { "{" MINIMAL ", \"firmware\": {\"type\": \"bios\"}, \"image\": {\"properties\": {\"hw_firmware_type\": \"uefi\"}}}",
                  "key 'firmware.type': conflicts with image property hw_firmware_type" },
                { "{" MINIMAL ", \"firmware\": {\"initrd\": \"/boot/initrd\"}}", "key 'firmware.kernel': missing" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"rel/path\"}]}", "key 'disks[0].path': must be an absolute path" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/a\", \"format\": \"vmdk\"}]}", "key 'disks[0].format': must be raw or qcow2" },
                { "{" MINIMAL ", \"disks\": {}}", "key 'disks': must be an array" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": \"/b\"}]}", "key 'disks[0].backing': must be an object" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\"}}]}", "key 'disks[0].backing.format': missing" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"format\": \"raw\"}}]}", "key 'disks[0].backing.path': missing" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"b\", \"format\": \"raw\"}}]}",
                  "key 'disks[0].backing.path': must be an absolute path" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\", \"format\": \"vmdk\"}}]}",
                  "key 'disks[0].backing.format': must be raw or qcow2" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\", \"format\": \"raw\", \"readonly\": true}}]}",
                  "key 'disks[0].backing.readonly': unknown key" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\", \"format\": \"raw\", \"backing\": {\"path\": \"/c\", \"format\": \"raw\"}}}]}",
                  "key 'disks[0].backing.backing': a raw image has no backing file" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"backing\": {\"path\": \"/b\", \"format\": \"raw\"}}]}",
                  "key 'disks[0].backing': a raw image has no backing file" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/t\", \"format\": \"raw\"}}]}",
                  "key 'disks[0].backing.path': names the disk's own image" },
                { "{" MINIMAL ", \"disks\": [{\"path\": \"/t\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/b\", \"format\": \"raw\"}}}]}",
                  "key 'disks[0].backing.backing.path': names an image already in the chain" },
                { "{\"uuid\": \"" UUID "\", \"name\": \"a\\tb\", \"vcpus\": 1, \"memory_mb\": 256, \"flavor\": {\"name\": \"f\"}}",
                  "key 'name': must be printable characters" },
};

static void check_bad_specs(const struct bad_case *c) {
        char *msg = parse_error(c->json);

        cr_assert_not_null(msg, "accepted: %s", c->json);
        cr_assert(strstr(msg, c->expect), "message '%s' lacks '%s'", msg, c->expect);
        cr_assert(strstr(msg, "guest spec 'g.json'"), "message '%s' does not name the file", msg);
        free(msg);
}

Test(guestspec, missing_file_exits_66) {
        struct guest_spec spec;
        vmsup_error *err = NULL;

        cr_assert_lt(guest_spec_load("/nonexistent/guest.json", &spec, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_NOT_FOUND);
        cr_assert(strstr(err->msg, "/nonexistent/guest.json"));
        vmsup_error_free(err);
}

Test(guestspec, bad_specs) {
        for (size_t i = 0; i < sizeof(bad_specs_cases) / sizeof(bad_specs_cases[0]); i++)
                check_bad_specs(&bad_specs_cases[i]);
}

/* The tests' own spec writer (tests/helpers.c): every key lands where vmsup reads it. */
Test(guestspec, the_tests_spec_writer_writes_what_vmsup_reads) {
        char *dir = test_mkdtemp(), *path;
        struct guest_spec spec;
        vmsup_error *err = NULL;

        path = test_write_spec(dir, "all.json",
                               &(struct test_spec) { .uuid = UUID, .name = "web-1", .user_id = "u", .project_id = "p",
                                                     .extra_specs = "\"hw:tpm_version\": \"1.2\", \"hw:tpm_model\": \"tpm-tis\"",
                                                     .uefi = true, .guest_dir = "/srv/guest", .hold = true,
                                                     .disks = "[{\"path\": \"/srv/d.qcow2\", \"format\": \"qcow2\"}]" });
        cr_assert_eq(guest_spec_load(path, &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(spec.uuid, UUID);
        cr_assert_str_eq(spec.name, "web-1");
        cr_assert_eq(spec.vcpus, 1);
        cr_assert_eq(spec.memory_mb, 256);
        cr_assert_str_eq(spec.owner_user_id, "u");
        cr_assert_str_eq(spec.owner_project_id, "p");
        cr_assert_str_eq(spec.flavor_name, "m1.tpm");
        cr_assert_str_eq(guest_spec_extra_spec(&spec, "hw:tpm_version"), "1.2");
        cr_assert_str_eq(guest_spec_extra_spec(&spec, "hw:tpm_model"), "tpm-tis");
        cr_assert_str_eq(spec.image_name, "demo");
        cr_assert_str_eq(spec.firmware_type, "uefi");
        cr_assert_str_eq(spec.kernel, "/srv/guest/vmlinuz");
        cr_assert_str_eq(spec.initrd, "/srv/guest/initrd.img");
        cr_assert_str_eq(spec.cmdline, "console=ttyS0 quiet tpmprobe.hold");
        cr_assert_eq(spec.n_disks, 1);
        cr_assert_str_eq(spec.disks[0].path, "/srv/d.qcow2");
        guest_spec_clear(&spec);
        free(path);

        /* the defaults: TPM 2.0 CRB, bios, no owner, firmware or disks; and the overrides */
        path = test_write_spec(dir, "least.json", &(struct test_spec) { .uuid = UUID });
        cr_assert_eq(guest_spec_load(path, &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(spec.name, "g");
        cr_assert_str_eq(guest_spec_extra_spec(&spec, "hw:tpm_version"), "2.0");
        cr_assert_str_eq(guest_spec_extra_spec(&spec, "hw:tpm_model"), "tpm-crb");
        cr_assert_str_eq(spec.firmware_type, "bios");
        cr_assert_null(spec.owner_user_id);
        cr_assert_null(spec.kernel);
        cr_assert_eq(spec.n_disks, 0);
        guest_spec_clear(&spec);
        free(path);
        path = test_write_spec(dir, "other.json",
                               &(struct test_spec) { .uuid = UUID, .flavor = "m1.small", .extra_specs = "", .image = "img",
                                                     .image_properties = "\"hw_tpm_version\": \"2.0\"",
                                                     .firmware = "{\"kernel\": \"/k\"}" });
        cr_assert_eq(guest_spec_load(path, &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(spec.flavor_name, "m1.small");
        cr_assert_null(guest_spec_extra_spec(&spec, "hw:tpm_version"));
        cr_assert_str_eq(spec.image_name, "img");
        cr_assert_str_eq(guest_spec_image_property(&spec, "hw_tpm_version"), "2.0");
        cr_assert_str_eq(spec.kernel, "/k");
        guest_spec_clear(&spec);
        free(path);
        test_rmtree(dir);
        free(dir);
}

Test(guestspec, graphics_vnc_or_none) {
        const char *with = "{" MINIMAL ", \"graphics\": {\"type\": \"vnc\"}}";
        const char *null = "{" MINIMAL ", \"graphics\": null}";
        struct guest_spec spec;
        vmsup_error *err = NULL;

        cr_assert_eq(guest_spec_parse(with, strlen(with), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(spec.graphics, "vnc");
        guest_spec_clear(&spec);
        cr_assert_eq(guest_spec_parse(null, strlen(null), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_null(spec.graphics, "null: no graphical console");
        guest_spec_clear(&spec);
        cr_assert_eq(guest_spec_parse("{" MINIMAL "}", strlen("{" MINIMAL "}"), "g.json", &spec, &err), 0);
        cr_assert_null(spec.graphics, "absent: no graphical console");
        guest_spec_clear(&spec);
}

Test(guestspec, bad_graphics_name_the_key) {
        static const struct {
                const char *graphics, *want;
        } cases[] = {
                { "{\"type\": \"spice\"}", "key 'graphics.type': must be vnc" },
                { "{\"type\": \"VNC\"}", "key 'graphics.type': must be vnc" },
                { "{\"type\": 5900}", "key 'graphics.type': must be a string" },
                { "{}", "key 'graphics.type': missing" },
                { "{\"type\": \"vnc\", \"listen\": \"0.0.0.0\"}", "key 'graphics.listen': unknown key" },
                { "\"vnc\"", "key 'graphics': must be an object" },
                { "[{\"type\": \"vnc\"}]", "key 'graphics': must be an object" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char json[512], *msg;

                snprintf(json, sizeof(json), "{" MINIMAL ", \"graphics\": %s}", cases[i].graphics);
                msg = parse_error(json);
                cr_assert_not_null(msg, "%s was accepted", json);
                cr_assert(strstr(msg, cases[i].want), "%s: '%s' lacks '%s'", json, msg, cases[i].want);
                free(msg);
        }
}

Test(guestspec, nics_in_order_with_defaults_and_derived_macs) {
        const char *json = "{" MINIMAL ", \"nics\": [{\"ifname\": \"tap-a\", \"mac\": \"FA:16:3E:00:00:01\", \"mtu\": 1450},"
                           " {\"ifname\": \"tap-b\", \"model\": \"e1000\"},"
                           " {\"ifname\": \"tap-c\", \"queues\": 4, \"slot\": 5}]}";
        struct guest_spec spec, again;
        vmsup_error *err = NULL;
        char derived[18];

        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(spec.n_nics, 3);
        cr_assert_str_eq(spec.nics[0].ifname, "tap-a");
        cr_assert_str_eq(spec.nics[0].mac, "fa:16:3e:00:00:01", "a MAC is kept, in lower case");
        cr_assert_str_eq(spec.nics[0].model, "virtio");
        cr_assert_eq(spec.nics[0].mtu, 1450);
        cr_assert_eq(spec.nics[0].queues, 1);
        cr_assert_eq(spec.nics[0].slot, 0);
        cr_assert_str_eq(spec.nics[1].model, "e1000");
        cr_assert_eq(spec.nics[1].mtu, 0, "no mtu: the tap's is left as it is");
        cr_assert_eq(spec.nics[1].slot, 1, "a NIC without a slot takes its index");
        cr_assert_eq(strncmp(spec.nics[1].mac, "fa:16:3e:", 9), 0, "derived with Nova's prefix: %s", spec.nics[1].mac);
        guest_nic_derive_mac(UUID, 1, derived);
        cr_assert_str_eq(spec.nics[1].mac, derived);
        cr_assert_eq(spec.nics[2].queues, 4);
        cr_assert_eq(spec.nics[2].slot, 5);
        cr_assert_str_neq(spec.nics[1].mac, spec.nics[2].mac);
        /* the same at every start */
        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &again, &err), 0);
        cr_assert_str_eq(again.nics[2].mac, spec.nics[2].mac);
        guest_spec_clear(&again);
        {
                /* what the spec copy gets back parses to the same NICs */
                _cleanup_json_ json_object *arr = guest_spec_nics_to_json(spec.nics, spec.n_nics);
                char *text = NULL;

                cr_assert(asprintf(&text, "{" MINIMAL ", \"nics\": %s}", json_object_to_json_string(arr)) > 0);
                cr_assert_eq(guest_spec_parse(text, strlen(text), "g.json", &again, &err), 0, "%s", err ? err->msg : "");
                cr_assert_eq(again.n_nics, 3);
                for (size_t i = 0; i < 3; i++) {
                        cr_assert_str_eq(again.nics[i].mac, spec.nics[i].mac);
                        cr_assert_eq(again.nics[i].slot, spec.nics[i].slot);
                        cr_assert_eq(again.nics[i].mtu, spec.nics[i].mtu);
                }
                guest_spec_clear(&again);
                free(text);
        }
        guest_spec_clear(&spec);
}

Test(guestspec, bad_nics_name_the_key) {
        static const struct {
                const char *nics, *want;
        } cases[] = {
                { "{}", "key 'nics': must be an array" },
                { "[{}]", "key 'nics[0].ifname': missing" },
                { "[{\"ifname\": \"tap0\", \"colour\": 1}]", "key 'nics[0].colour': unknown key" },
                { "[{\"ifname\": \"tap/0\"}]", "key 'nics[0].ifname': 'tap/0' is not a network interface name" },
                { "[{\"ifname\": \"a-very-long-tap-name\"}]", "key 'nics[0].ifname'" },
                { "[{\"ifname\": \"tap0\", \"mac\": \"fa:16:3e:00:00\"}]", "key 'nics[0].mac': 'fa:16:3e:00:00' is not a unicast MAC" },
                { "[{\"ifname\": \"tap0\", \"mac\": \"01:16:3e:00:00:01\"}]", "key 'nics[0].mac'" },
                { "[{\"ifname\": \"tap0\", \"model\": \"rtl8139\"}]", "key 'nics[0].model': 'rtl8139' must be virtio or e1000" },
                { "[{\"ifname\": \"tap0\", \"mtu\": 20}]", "key 'nics[0].mtu': 20 is out of range" },
                { "[{\"ifname\": \"tap0\", \"mtu\": \"1500\"}]", "key 'nics[0].mtu': must be an integer" },
                { "[{\"ifname\": \"tap0\", \"queues\": 0}]", "key 'nics[0].queues': 0 is out of range" },
                { "[{\"ifname\": \"tap0\", \"queues\": 2, \"model\": \"e1000\"}]", "key 'nics[0].queues': 2 queues need model virtio" },
                { "[{\"ifname\": \"tap0\", \"slot\": 8}]", "key 'nics[0].slot': out of range" },
                { "[{\"ifname\": \"tap0\"}, {\"ifname\": \"tap0\"}]", "key 'nics[1].ifname': the same tap" },
                { "[{\"ifname\": \"tap0\", \"mac\": \"fa:16:3e:00:00:01\"}, {\"ifname\": \"tap1\", \"mac\": \"fa:16:3e:00:00:01\"}]",
                  "key 'nics[1].mac': the same MAC" },
                { "[{\"ifname\": \"tap0\", \"slot\": 1}, {\"ifname\": \"tap1\"}]", "key 'nics[1].slot': the same slot" },
                { "[{\"ifname\": \"t0\"}, {\"ifname\": \"t1\"}, {\"ifname\": \"t2\"}, {\"ifname\": \"t3\"}, {\"ifname\": \"t4\"},"
                  " {\"ifname\": \"t5\"}, {\"ifname\": \"t6\"}, {\"ifname\": \"t7\"}, {\"ifname\": \"t8\"}]", "key 'nics': more than 8" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *json = NULL, *msg;

                cr_assert(asprintf(&json, "{" MINIMAL ", \"nics\": %s}", cases[i].nics) > 0);
                msg = parse_error(json);
                cr_assert_not_null(msg, "accepted: %s", cases[i].nics);
                cr_assert(strstr(msg, cases[i].want), "%s: got '%s', want '%s'", cases[i].nics, msg, cases[i].want);
                cr_assert(strstr(msg, "g.json"), "names the file: %s", msg);
                free(msg);
                free(json);
        }
}
