-- Contract: `operations_by_order` (order_id) goes. ListOperations' order filter reads through
-- `operations_by_resource` (0005), whose leading expression is the order id of every operation
-- on an order, and nothing else reads by order id alone. The index cost every claim an insert
-- into one more b-tree keyed by a random id: about one more page written per refund, at any
-- number of stored operations.
--
-- A release before this one keeps working against the contracted schema: no statement of it
-- names the index, and its order filter (`order_id = …`) still answers, by scanning.
DROP INDEX operations_by_order;
