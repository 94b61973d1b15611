// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Membership} from "./Membership.sol";

/// @title JointPurchase: members pool their orders to reach a better price tier.
/// @notice States the joint-purchase rules of docs/rules.md (`purchase.open`, `commit`,
/// `close`, `confirm`), check for check and in the same order. Block time is
/// `block.timestamp * 1000` milliseconds, so deadlines are in the same unit as the native
/// engine's `deadline_ms`.
contract JointPurchase {
    uint8 public constant STATUS_OPEN = 1;
    uint8 public constant STATUS_CLOSED = 2;
    uint8 public constant STATUS_FAILED = 3;
    uint8 public constant STATUS_CONFIRMED = 4;

    /// Role bits of Membership, repeated here so a check costs no external call.
    uint8 internal constant ROLE_MEMBER = 1;
    uint8 internal constant ROLE_SUPPLIER = 2;

    /// Bounds shared with node/limits.py.
    uint256 public constant TIERS_MAX = 16;
    uint256 public constant QUANTITY_MAX = 1e9;
    uint256 public constant UNIT_PRICE_MAX = 1e6;

    struct Tier {
        uint64 minQuantity;
        uint64 unitPrice;
    }

    struct Purchase {
        uint8 status;
        uint32 opener;
        uint32 supplier;
        uint64 deadlineMs;
        uint64 minTotal;
        uint64 total;
        uint64 unitPrice;
        Tier[] tiers;
        /// Participants with a commitment above zero, in no particular order.
        uint32[] participants;
        mapping(uint32 => uint64) commitment;
        mapping(uint32 => uint256) position; // index in participants, plus one
        mapping(uint32 => uint64) cost;
    }

    /// What a client (and the differential test) reads about a purchase.
    struct PurchaseView {
        bool exists;
        uint8 status;
        string opener;
        string supplier;
        uint64 deadlineMs;
        uint64 minTotal;
        uint64 total;
        uint64 unitPrice;
        Tier[] tiers;
        string[] participants;
        uint64[] commitments;
        uint64[] costs;
    }

    Membership public immutable registry;
    mapping(string => Purchase) internal purchases;

    event PurchaseOpened(
        string purchaseId,
        string opener,
        string supplier,
        string item,
        string unit,
        Tier[] tiers,
        uint64 minTotal,
        uint64 deadlineMs
    );
    event Committed(string purchaseId, string member, uint64 quantity, uint64 total);
    event PurchaseFailed(string purchaseId, uint64 total);
    event PurchaseClosed(string purchaseId, uint64 total, uint64 unitPrice);
    event CostAssigned(string purchaseId, string member, uint64 quantity, uint64 cost);
    event PurchaseConfirmed(string purchaseId);

    constructor(Membership registry_) {
        registry = registry_;
    }

    // --- rules ----------------------------------------------------------------------------

    /// `purchase.open`.
    function open(
        bytes32 txId,
        string calldata purchaseId,
        string calldata supplier,
        string calldata item,
        string calldata unit,
        Tier[] calldata tiers,
        uint64 minTotal,
        uint64 deadlineMs
    ) external {
        txId;
        _checkTiers(tiers, minTotal);
        (uint32 sender, uint8 senderRoles) = registry.senderOf(msg.sender);
        require(senderRoles & ROLE_MEMBER != 0, "role-not-allowed");
        Purchase storage p = purchases[purchaseId];
        require(p.status == 0, "purchase-exists");
        (uint32 supplierNumber, uint8 supplierRoles) = registry.memberOf(supplier);
        require(supplierNumber != 0, "unknown-member");
        require(supplierRoles & ROLE_SUPPLIER != 0, "not-a-supplier");
        require(uint256(deadlineMs) > _nowMs(), "deadline-passed");

        p.status = STATUS_OPEN;
        p.opener = sender;
        p.supplier = supplierNumber;
        p.deadlineMs = deadlineMs;
        p.minTotal = minTotal;
        for (uint256 i = 0; i < tiers.length; i++) {
            p.tiers.push(tiers[i]);
        }
        emit PurchaseOpened(
            purchaseId, registry.idOf(sender), supplier, item, unit, tiers, minTotal, deadlineMs
        );
    }

    /// `purchase.commit`: `quantity` is the sender's new total; 0 withdraws.
    function commit(bytes32 txId, string calldata purchaseId, uint64 quantity) external {
        txId;
        require(quantity <= QUANTITY_MAX, "invalid-payload");
        (uint32 sender, uint8 senderRoles) = registry.senderOf(msg.sender);
        Purchase storage p = purchases[purchaseId];
        require(p.status != 0, "unknown-purchase");
        require(senderRoles & ROLE_MEMBER != 0, "role-not-allowed");
        require(p.status == STATUS_OPEN, "purchase-not-open");
        require(_nowMs() < uint256(p.deadlineMs), "deadline-passed");

        uint64 previous = p.commitment[sender];
        p.total = p.total - previous + quantity;
        p.commitment[sender] = quantity;
        if (previous == 0 && quantity != 0) {
            p.participants.push(sender);
            p.position[sender] = p.participants.length;
        } else if (previous != 0 && quantity == 0) {
            _dropParticipant(p, sender);
        }
        emit Committed(purchaseId, registry.idOf(sender), quantity, p.total);
    }

    /// `purchase.close`: anyone, once the deadline is reached.
    function close(bytes32 txId, string calldata purchaseId) external {
        txId;
        registry.senderOf(msg.sender);
        Purchase storage p = purchases[purchaseId];
        require(p.status != 0, "unknown-purchase");
        require(p.status == STATUS_OPEN, "purchase-not-open");
        require(_nowMs() >= uint256(p.deadlineMs), "deadline-not-reached");

        uint64 total = p.total;
        if (total < p.minTotal) {
            p.status = STATUS_FAILED;
            emit PurchaseFailed(purchaseId, total);
            return;
        }
        uint64 price = _tierPrice(p.tiers, total);
        p.status = STATUS_CLOSED;
        p.unitPrice = price;
        emit PurchaseClosed(purchaseId, total, price);
        uint256 count = p.participants.length;
        for (uint256 i = 0; i < count; i++) {
            uint32 participant = p.participants[i];
            uint64 quantity = p.commitment[participant];
            // At most 10^9 x 10^6 = 10^15: exact in uint64 (and checked by 0.8 arithmetic).
            uint64 cost = quantity * price;
            p.cost[participant] = cost;
            emit CostAssigned(purchaseId, registry.idOf(participant), quantity, cost);
        }
    }

    /// `purchase.confirm`: the supplier accepts the closed order.
    function confirm(bytes32 txId, string calldata purchaseId) external {
        txId;
        (uint32 sender,) = registry.senderOf(msg.sender);
        Purchase storage p = purchases[purchaseId];
        require(p.status != 0, "unknown-purchase");
        require(p.supplier == sender, "not-supplier");
        require(p.status == STATUS_CLOSED, "purchase-not-closed");
        p.status = STATUS_CONFIRMED;
        emit PurchaseConfirmed(purchaseId);
    }

    // --- views ----------------------------------------------------------------------------

    /// Why a shipment from `shipper` to `recipient` may not reference `purchaseId`, as an
    /// error code, or "" when it may (docs/rules.md, `shipment.create` step 5).
    function shipmentProblem(string calldata purchaseId, uint32 shipper, uint32 recipient)
        external
        view
        returns (string memory)
    {
        Purchase storage p = purchases[purchaseId];
        if (p.status == 0) {
            return "unknown-purchase";
        }
        if (p.status != STATUS_CONFIRMED) {
            return "purchase-not-confirmed";
        }
        if (p.supplier != shipper) {
            return "not-supplier";
        }
        if (p.commitment[recipient] == 0) {
            return "not-participant";
        }
        return "";
    }

    function purchase(string calldata purchaseId) public view returns (PurchaseView memory v) {
        Purchase storage p = purchases[purchaseId];
        if (p.status == 0) {
            return v;
        }
        v.exists = true;
        v.status = p.status;
        v.opener = registry.idOf(p.opener);
        v.supplier = registry.idOf(p.supplier);
        v.deadlineMs = p.deadlineMs;
        v.minTotal = p.minTotal;
        v.total = p.total;
        v.unitPrice = p.unitPrice;
        v.tiers = p.tiers;
        uint256 count = p.participants.length;
        v.participants = new string[](count);
        v.commitments = new uint64[](count);
        v.costs = new uint64[](count);
        for (uint256 i = 0; i < count; i++) {
            uint32 participant = p.participants[i];
            v.participants[i] = registry.idOf(participant);
            v.commitments[i] = p.commitment[participant];
            v.costs[i] = p.cost[participant];
        }
    }

    /// Several purchases in one call (one round trip for clients and the differential test).
    function purchasesOf(string[] calldata purchaseIds)
        external
        view
        returns (PurchaseView[] memory views)
    {
        views = new PurchaseView[](purchaseIds.length);
        for (uint256 i = 0; i < purchaseIds.length; i++) {
            views[i] = purchase(purchaseIds[i]);
        }
    }

    // --- internals ------------------------------------------------------------------------

    function _nowMs() internal view returns (uint256) {
        return block.timestamp * 1000;
    }

    /// The structural part of the `purchase.open` schema (docs/rules.md, payload schemas).
    function _checkTiers(Tier[] calldata tiers, uint64 minTotal) internal pure {
        require(tiers.length >= 1 && tiers.length <= TIERS_MAX, "invalid-payload");
        for (uint256 i = 0; i < tiers.length; i++) {
            Tier calldata tier = tiers[i];
            require(
                tier.minQuantity >= 1 && tier.minQuantity <= QUANTITY_MAX, "invalid-payload"
            );
            require(tier.unitPrice <= UNIT_PRICE_MAX, "invalid-payload");
            if (i > 0) {
                require(tier.minQuantity > tiers[i - 1].minQuantity, "invalid-payload");
                require(tier.unitPrice <= tiers[i - 1].unitPrice, "invalid-payload");
            }
        }
        require(
            minTotal >= tiers[0].minQuantity && minTotal <= QUANTITY_MAX, "invalid-payload"
        );
    }

    /// The unit price of the last tier whose minimum quantity the total reaches.
    function _tierPrice(Tier[] storage tiers, uint64 total) internal view returns (uint64 price) {
        price = tiers[0].unitPrice;
        for (uint256 i = 0; i < tiers.length; i++) {
            if (tiers[i].minQuantity <= total) {
                price = tiers[i].unitPrice;
            }
        }
    }

    function _dropParticipant(Purchase storage p, uint32 participant) internal {
        uint256 index = p.position[participant] - 1;
        uint256 last = p.participants.length - 1;
        if (index != last) {
            uint32 moved = p.participants[last];
            p.participants[index] = moved;
            p.position[moved] = index + 1;
        }
        p.participants.pop();
        delete p.position[participant];
    }
}
