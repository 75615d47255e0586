// The order of table changes (agent/table-edits.ts): a change older than one applied to any of the
// same entries is refused, whatever the order of arrival; older changes to other entries apply.
import { describe, expect, test } from "bun:test";
import { CHANGES_REMEMBERED, ChangeOrder } from "../agent/table-edits.ts";

/** Applies the change if it is admitted; returns whether it was. */
function apply(order: ChangeOrder, first: number, count: number, change: number): boolean {
  if (!order.admits(first, count, change)) return false;
  order.applied(first, count, change);
  return true;
}

describe("change order", () => {
  test("changes in their order all apply", () => {
    const order = new ChangeOrder(1);
    expect([apply(order, 0, 4, 2), apply(order, 2, 1, 3), apply(order, 0, 10, 4)]).toEqual([true, true, true]);
  });

  test("a late change to entries a newer one changed is refused, on any overlap", () => {
    const order = new ChangeOrder(1);
    apply(order, 5, 3, 3);
    expect(order.admits(5, 3, 2)).toBe(false);
    expect(order.admits(7, 1, 2)).toBe(false);
    expect(order.admits(0, 6, 2)).toBe(false);
  });

  test("a late change to other entries applies, and is then remembered against older ones", () => {
    const order = new ChangeOrder(1);
    apply(order, 5, 3, 4);
    expect(apply(order, 8, 2, 3)).toBe(true);
    expect(apply(order, 0, 5, 2)).toBe(true);
    expect(order.admits(9, 1, 2)).toBe(false);
  });

  test("nothing older than the table applies to it", () => {
    const order = new ChangeOrder(10);
    expect(order.admits(0, 1, 9)).toBe(false);
    expect(order.admits(0, 1, 11)).toBe(true);
  });

  test("a late change older than every remembered one is refused, though it touches none of them", () => {
    const order = new ChangeOrder(0);
    const last = 3 * CHANGES_REMEMBERED;
    for (let change = 1; change <= last; change += 1) apply(order, change, 1, change);
    const forgotten = last - CHANGES_REMEMBERED;
    expect(order.admits(last + 1, 1, forgotten - 1)).toBe(false);
    expect(order.admits(last + 1, 1, forgotten)).toBe(true);
    expect(order.admits(last, 1, last - 1)).toBe(false);
  });

  test("applying a change older than one applied to the same entries is an assertion failure", () => {
    const order = new ChangeOrder(1);
    apply(order, 0, 1, 5);
    expect(() => order.applied(0, 1, 4)).toThrow(/applied after a newer one/);
  });
});
