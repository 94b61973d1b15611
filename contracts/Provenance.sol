// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {JointPurchase} from "./JointPurchase.sol";
import {Membership} from "./Membership.sol";

/// @title Provenance: assets, their owner and custodian, shipments and transformations.
/// @notice States the provenance rules of docs/rules.md (`asset.register`, `transfer`,
/// `transform`, `observe`, `shipment.create`, `receive`, `cancel`) check for check and in
/// the same order; a failing check reverts with the same kebab-case code as the native
/// engine. Every change to an asset appends an event to that asset's chain:
///
///     event = sha256("coopledger:event:v1:" || prev || txId || type || 0x00 || assetId)
///
/// `txId` is the ledger transaction id the caller passes, so the chain heads here and in the
/// native engine are equal byte for byte. Descriptive fields (product, unit, origin,
/// metadata, observations) are written to the event log, not to storage: no rule reads them,
/// and an indexer rebuilds them from the logs at a fraction of the storage cost.
contract Provenance {
    uint8 public constant ASSET_ACTIVE = 1;
    uint8 public constant ASSET_IN_TRANSIT = 2;
    uint8 public constant ASSET_CONSUMED = 3;

    uint8 public constant SHIPMENT_IN_TRANSIT = 1;
    uint8 public constant SHIPMENT_RECEIVED = 2;
    uint8 public constant SHIPMENT_CANCELLED = 3;

    /// Role bits of Membership: "may own" and "holds goods" of docs/rules.md.
    uint8 internal constant ROLES_MAY_OWN = 1 | 2; // member, supplier
    uint8 internal constant ROLES_HOLD_GOODS = 1 | 2 | 4; // member, supplier, carrier
    uint8 internal constant ROLE_AUDITOR = 8;

    /// Bounds shared with node/limits.py.
    uint256 public constant ASSETS_PER_SHIPMENT_MAX = 64;
    uint256 public constant TRANSFORM_INPUTS_MAX = 32;
    uint256 public constant TRANSFORM_OUTPUTS_MAX = 32;
    uint256 public constant QUANTITY_MAX = 1e9;
    uint256 internal constant ID_BYTES_MAX = 64;

    bytes internal constant EVENT_TAG = "coopledger:event:v1:";

    struct Asset {
        uint8 status;
        uint32 owner;
        uint32 custodian;
        uint32 shipment;
        uint32 eventCount;
        uint64 quantity;
        bytes32 lastEvent;
    }

    struct Shipment {
        uint8 status;
        uint32 from;
        uint32 to;
        string id;
        string purchaseId;
        string[] assetIds;
    }

    struct Output {
        string assetId;
        string product;
        uint64 quantity;
        string unit;
    }

    struct AssetView {
        bool exists;
        uint8 status;
        string owner;
        string custodian;
        string shipmentId;
        uint64 quantity;
        bytes32 lastEvent;
        uint32 eventCount;
    }

    struct ShipmentView {
        bool exists;
        uint8 status;
        string from;
        string to;
        string purchaseId;
        string[] assetIds;
    }

    Membership public immutable registry;
    JointPurchase public immutable purchases;

    mapping(string => Asset) internal assets;
    /// shipments[0] is a placeholder so that number 0 means "no shipment".
    Shipment[] internal shipments;
    mapping(string => uint32) internal shipmentNumber;

    /// One link of an asset's event chain; `seq` counts from 0.
    event AssetEvent(
        string assetId, uint32 seq, bytes32 eventHash, bytes32 prevHash, bytes32 txId, string kind
    );
    event AssetRegistered(
        string assetId,
        address by,
        string product,
        uint64 quantity,
        string unit,
        string origin,
        bytes metadata
    );
    event AssetTransferred(string assetId, address by, string to);
    event AssetTransformed(string[] inputs, string assetId, string product, uint64 quantity, string unit);
    event AssetObserved(string assetId, address by, string kind, bytes data);
    event ShipmentCreated(
        string shipmentId, address by, string to, string[] assetIds, string purchaseId
    );
    event ShipmentReceived(string shipmentId, address by);
    event ShipmentCancelled(string shipmentId, address by);

    constructor(Membership registry_, JointPurchase purchases_) {
        registry = registry_;
        purchases = purchases_;
        shipments.push();
    }

    // --- rules ----------------------------------------------------------------------------

    /// `asset.register`: the sender becomes owner and custodian. `metadata` is the canonical
    /// JSON of the optional metadata object ("" when absent).
    function register(
        bytes32 txId,
        string calldata assetId,
        string calldata product,
        uint64 quantity,
        string calldata unit,
        string calldata origin,
        bytes calldata metadata
    ) external {
        _checkId(assetId);
        _checkQuantity(quantity);
        (uint32 sender, uint8 roles) = registry.senderOf(msg.sender);
        require(roles & ROLES_MAY_OWN != 0, "role-not-allowed");
        _create(txId, assetId, sender, quantity, "asset.register");
        emit AssetRegistered(assetId, msg.sender, product, quantity, unit, origin, metadata);
    }

    /// `asset.transfer`: a sale; custody does not move.
    function transfer(bytes32 txId, string calldata assetId, string calldata to) external {
        (uint32 sender,) = registry.senderOf(msg.sender);
        Asset storage a = assets[assetId];
        require(a.status != 0, "unknown-asset");
        require(a.owner == sender, "not-owner");
        require(a.status != ASSET_CONSUMED, "asset-consumed");
        (uint32 recipient, uint8 recipientRoles) = registry.memberOf(to);
        require(recipient != 0, "unknown-member");
        require(recipient != a.owner, "same-member");
        require(recipientRoles & ROLES_MAY_OWN != 0, "role-not-allowed");
        a.owner = recipient;
        _appendEvent(a, txId, "asset.transfer", assetId);
        emit AssetTransferred(assetId, msg.sender, to);
    }

    /// `shipment.create`: custody hand-over of `assetIds` to `to`, optionally delivering a
    /// confirmed joint purchase (`purchaseId`, "" for none).
    function createShipment(
        bytes32 txId,
        string calldata shipmentId,
        string[] calldata assetIds,
        string calldata to,
        string calldata purchaseId
    ) external {
        _checkId(shipmentId);
        require(
            assetIds.length >= 1 && assetIds.length <= ASSETS_PER_SHIPMENT_MAX, "invalid-payload"
        );
        (uint32 sender,) = registry.senderOf(msg.sender);
        require(shipmentNumber[shipmentId] == 0, "shipment-exists");
        (uint32 recipient, uint8 recipientRoles) = registry.memberOf(to);
        require(recipient != 0, "unknown-member");
        require(recipient != sender, "same-member");
        require(recipientRoles & ROLES_HOLD_GOODS != 0, "role-not-allowed");
        if (bytes(purchaseId).length != 0) {
            string memory problem = purchases.shipmentProblem(purchaseId, sender, recipient);
            require(bytes(problem).length == 0, problem);
        }

        uint32 number = uint32(shipments.length);
        Shipment storage s = shipments.push();
        s.status = SHIPMENT_IN_TRANSIT;
        s.from = sender;
        s.to = recipient;
        s.id = shipmentId;
        s.purchaseId = purchaseId;
        shipmentNumber[shipmentId] = number;
        // Checking and moving each asset in turn fails on the same asset with the same code
        // as checking them all first: any failure reverts the whole call.
        for (uint256 i = 0; i < assetIds.length; i++) {
            Asset storage a = _movable(assetIds[i], sender);
            a.status = ASSET_IN_TRANSIT;
            a.shipment = number;
            s.assetIds.push(assetIds[i]);
            _appendEvent(a, txId, "shipment.create", assetIds[i]);
        }
        emit ShipmentCreated(shipmentId, msg.sender, to, assetIds, purchaseId);
    }

    /// `shipment.receive`: the recipient takes custody.
    function receiveShipment(bytes32 txId, string calldata shipmentId) external {
        (uint32 sender,) = registry.senderOf(msg.sender);
        Shipment storage s = _shipment(shipmentId);
        require(s.to == sender, "not-recipient");
        require(s.status == SHIPMENT_IN_TRANSIT, "shipment-not-in-transit");
        s.status = SHIPMENT_RECEIVED;
        _release(s, txId, "shipment.receive", sender);
        emit ShipmentReceived(shipmentId, msg.sender);
    }

    /// `shipment.cancel`: the shipper takes the shipment back before receipt.
    function cancelShipment(bytes32 txId, string calldata shipmentId) external {
        (uint32 sender,) = registry.senderOf(msg.sender);
        Shipment storage s = _shipment(shipmentId);
        require(s.from == sender, "not-shipper");
        require(s.status == SHIPMENT_IN_TRANSIT, "shipment-not-in-transit");
        s.status = SHIPMENT_CANCELLED;
        _release(s, txId, "shipment.cancel", 0);
        emit ShipmentCancelled(shipmentId, msg.sender);
    }

    /// `asset.transform`: the inputs are consumed and the outputs created, linked to them.
    function transform(bytes32 txId, string[] calldata inputs, Output[] calldata outputs)
        external
    {
        require(inputs.length >= 1 && inputs.length <= TRANSFORM_INPUTS_MAX, "invalid-payload");
        require(
            outputs.length >= 1 && outputs.length <= TRANSFORM_OUTPUTS_MAX, "invalid-payload"
        );
        for (uint256 i = 0; i < outputs.length; i++) {
            _checkId(outputs[i].assetId);
            _checkQuantity(outputs[i].quantity);
        }
        (uint32 sender,) = registry.senderOf(msg.sender);
        // As in createShipment, each input is checked then consumed in turn; every input is
        // handled before any output, so the first failing check is the one the rules name.
        for (uint256 i = 0; i < inputs.length; i++) {
            Asset storage input = _movable(inputs[i], sender);
            input.status = ASSET_CONSUMED;
            _appendEvent(input, txId, "asset.transform", inputs[i]);
        }
        for (uint256 i = 0; i < outputs.length; i++) {
            Output calldata output = outputs[i];
            _create(txId, output.assetId, sender, output.quantity, "asset.transform");
            emit AssetTransformed(
                inputs, output.assetId, output.product, output.quantity, output.unit
            );
        }
    }

    /// `asset.observe`: by the custodian or an auditor, on an asset in any status.
    /// `data` is the canonical JSON of the observation.
    function observe(
        bytes32 txId,
        string calldata assetId,
        string calldata kind,
        bytes calldata data
    ) external {
        (uint32 sender, uint8 roles) = registry.senderOf(msg.sender);
        Asset storage a = assets[assetId];
        require(a.status != 0, "unknown-asset");
        require(
            a.custodian == sender || roles & ROLE_AUDITOR != 0, "not-custodian-or-auditor"
        );
        _appendEvent(a, txId, "asset.observe", assetId);
        emit AssetObserved(assetId, msg.sender, kind, data);
    }

    // --- views ----------------------------------------------------------------------------

    function asset(string calldata assetId) public view returns (AssetView memory v) {
        Asset storage stored = assets[assetId];
        if (stored.status == 0) {
            return v;
        }
        v.exists = true;
        v.status = stored.status;
        v.owner = registry.idOf(stored.owner);
        v.custodian = registry.idOf(stored.custodian);
        v.shipmentId = shipments[stored.shipment].id;
        v.quantity = stored.quantity;
        v.lastEvent = stored.lastEvent;
        v.eventCount = stored.eventCount;
    }

    function assetsOf(string[] calldata assetIds) external view returns (AssetView[] memory v) {
        v = new AssetView[](assetIds.length);
        for (uint256 i = 0; i < assetIds.length; i++) {
            v[i] = asset(assetIds[i]);
        }
    }

    function shipment(string calldata shipmentId) public view returns (ShipmentView memory v) {
        uint32 number = shipmentNumber[shipmentId];
        if (number == 0) {
            return v;
        }
        Shipment storage stored = shipments[number];
        v.exists = true;
        v.status = stored.status;
        v.from = registry.idOf(stored.from);
        v.to = registry.idOf(stored.to);
        v.purchaseId = stored.purchaseId;
        v.assetIds = stored.assetIds;
    }

    function shipmentsOf(string[] calldata shipmentIds)
        external
        view
        returns (ShipmentView[] memory v)
    {
        v = new ShipmentView[](shipmentIds.length);
        for (uint256 i = 0; i < shipmentIds.length; i++) {
            v[i] = shipment(shipmentIds[i]);
        }
    }

    // --- internals ------------------------------------------------------------------------

    function _create(
        bytes32 txId,
        string calldata assetId,
        uint32 sender,
        uint64 quantity,
        string memory kind
    ) internal {
        Asset storage created = assets[assetId];
        require(created.status == 0, "asset-exists");
        created.status = ASSET_ACTIVE;
        created.owner = sender;
        created.custodian = sender;
        created.quantity = quantity;
        _appendEvent(created, txId, kind, assetId);
    }

    /// An asset `sender` may hand over or transform, in the order of docs/rules.md.
    function _movable(string calldata assetId, uint32 sender)
        internal
        view
        returns (Asset storage a)
    {
        a = assets[assetId];
        require(a.status != 0, "unknown-asset");
        require(a.custodian == sender, "not-custodian");
        require(a.status != ASSET_CONSUMED, "asset-consumed");
        require(a.status != ASSET_IN_TRANSIT, "asset-in-transit");
    }

    function _shipment(string calldata shipmentId) internal view returns (Shipment storage) {
        uint32 number = shipmentNumber[shipmentId];
        require(number != 0, "unknown-shipment");
        return shipments[number];
    }

    /// Ends a shipment: each asset active again, with `newCustodian` (0 keeps the custodian).
    function _release(
        Shipment storage stored,
        bytes32 txId,
        string memory kind,
        uint32 newCustodian
    ) internal {
        uint256 count = stored.assetIds.length;
        for (uint256 i = 0; i < count; i++) {
            string memory assetId = stored.assetIds[i];
            Asset storage a = assets[assetId];
            a.status = ASSET_ACTIVE;
            a.shipment = 0;
            if (newCustodian != 0) {
                a.custodian = newCustodian;
            }
            _appendEvent(a, txId, kind, assetId);
        }
    }

    function _appendEvent(Asset storage a, bytes32 txId, string memory kind, string memory assetId)
        internal
    {
        bytes32 prev = a.lastEvent;
        bytes32 current =
            sha256(abi.encodePacked(EVENT_TAG, prev, txId, bytes(kind), bytes1(0), bytes(assetId)));
        uint32 seq = a.eventCount;
        a.lastEvent = current;
        a.eventCount = seq + 1;
        emit AssetEvent(assetId, seq, current, prev, txId, kind);
    }

    function _checkId(string calldata id) internal pure {
        uint256 length = bytes(id).length;
        require(length >= 1 && length <= ID_BYTES_MAX, "invalid-payload");
    }

    function _checkQuantity(uint64 quantity) internal pure {
        require(quantity >= 1 && quantity <= QUANTITY_MAX, "invalid-payload");
    }
}
