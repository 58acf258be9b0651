/* Request/response bookkeeping: every answer is routed to its request once;
 * unknown, duplicate and never-sent seq_numbers find nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cworker/cw.h"
#include "cworker/reqtab.h"

static void fn_a(void)
{
}
static void fn_b(void)
{
}

static void test_route_by_seq(void **state)
{
    (void)state;
    cw_reqtab_t t = CW_REQTAB_INIT;
    int ctx1, ctx2;
    assert_int_equal(cw_reqtab_add(&t, 0, fn_a, &ctx1), 0);
    assert_int_equal(cw_reqtab_add(&t, 1, fn_b, &ctx2), 0);
    assert_int_equal(cw_reqtab_count(&t), 2);
    cw_reqtab_entry_t e;
    /* answers may come in any order */
    assert_true(cw_reqtab_take(&t, 1, &e));
    assert_int_equal(e.seq, 1);
    assert_ptr_equal(e.fn, fn_b);
    assert_ptr_equal(e.ctx, &ctx2);
    assert_true(cw_reqtab_take(&t, 0, &e));
    assert_ptr_equal(e.fn, fn_a);
    assert_ptr_equal(e.ctx, &ctx1);
    assert_int_equal(cw_reqtab_count(&t), 0);
    cw_reqtab_free(&t);
}

static void test_unknown_duplicate_never_sent(void **state)
{
    (void)state;
    cw_reqtab_t t = CW_REQTAB_INIT;
    cw_reqtab_entry_t e;
    /* a response to a request never sent, on an empty table */
    assert_false(cw_reqtab_take(&t, 0, &e));
    assert_int_equal(cw_reqtab_add(&t, 5, fn_a, NULL), 0);
    /* never sent: a seq that is not waiting, including negative and huge ones */
    assert_false(cw_reqtab_take(&t, 6, &e));
    assert_false(cw_reqtab_take(&t, -1, &e));
    assert_false(cw_reqtab_take(&t, INT64_MAX, &e));
    assert_int_equal(cw_reqtab_count(&t), 1);
    /* the first answer is routed, a duplicate finds nothing */
    assert_true(cw_reqtab_take(&t, 5, &e));
    assert_false(cw_reqtab_take(&t, 5, &e));
    cw_reqtab_free(&t);
}

static void test_same_seq_twice_refused(void **state)
{
    (void)state;
    cw_reqtab_t t = CW_REQTAB_INIT;
    assert_int_equal(cw_reqtab_add(&t, 3, fn_a, NULL), 0);
    assert_int_equal(cw_reqtab_add(&t, 3, fn_b, NULL), CW_EPROTO);
    cw_reqtab_entry_t e;
    assert_true(cw_reqtab_take(&t, 3, &e));
    assert_ptr_equal(e.fn, fn_a);
    /* once answered, the number may be used again */
    assert_int_equal(cw_reqtab_add(&t, 3, fn_b, NULL), 0);
    cw_reqtab_free(&t);
}

static void test_forget_keeps_the_slot(void **state)
{
    (void)state;
    cw_reqtab_t t = CW_REQTAB_INIT;
    int gone, stays;
    assert_int_equal(cw_reqtab_add(&t, 1, fn_a, &gone), 0);
    assert_int_equal(cw_reqtab_add(&t, 2, fn_b, &stays), 0);
    assert_int_equal(cw_reqtab_add(&t, 3, fn_a, &gone), 0);
    cw_reqtab_forget(&t, &gone);
    cw_reqtab_entry_t e;
    /* the answer to a forgotten request is still consumed, not "unknown" */
    assert_true(cw_reqtab_take(&t, 1, &e));
    assert_null(e.fn);
    assert_true(cw_reqtab_take(&t, 2, &e));
    assert_ptr_equal(e.fn, fn_b);
    assert_true(cw_reqtab_take(&t, 3, &e));
    assert_null(e.fn);
    cw_reqtab_free(&t);
}

static void test_many_and_pop_all(void **state)
{
    (void)state;
    cw_reqtab_t t = CW_REQTAB_INIT;
    enum { N = 1000 };
    for (int64_t i = 0; i < N; i++)
        assert_int_equal(cw_reqtab_add(&t, i, fn_a, NULL), 0);
    cw_reqtab_entry_t e;
    /* take every third, then drain the rest as a closing link does */
    size_t taken = 0;
    for (int64_t i = 0; i < N; i += 3) {
        assert_true(cw_reqtab_take(&t, i, &e));
        assert_int_equal(e.seq, i);
        taken++;
    }
    unsigned char seen[N] = {0};
    size_t popped = 0;
    while (cw_reqtab_pop(&t, &e)) {
        assert_true(e.seq % 3 != 0);
        assert_int_equal(seen[e.seq], 0);
        seen[e.seq] = 1;
        popped++;
    }
    assert_int_equal(taken + popped, N);
    assert_false(cw_reqtab_pop(&t, &e));
    cw_reqtab_free(&t);
    assert_null(t.v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_by_seq),
        cmocka_unit_test(test_unknown_duplicate_never_sent),
        cmocka_unit_test(test_same_seq_twice_refused),
        cmocka_unit_test(test_forget_keeps_the_slot),
        cmocka_unit_test(test_many_and_pop_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
